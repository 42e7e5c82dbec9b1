"""The WSGI entry point: gunicorn -c app/proxy/gunicorn.conf.py app.proxy.wsgi:app"""

from app.proxy.app import create_app
from app.proxy.settings import ProxySettings
from app.shared.settings import load_settings_or_exit

app = create_app(load_settings_or_exit(ProxySettings))
