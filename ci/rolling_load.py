"""Steady requests against the proxy Service for a while; exits 1 if any failed.

Run inside the cluster by ci/e2e.sh during a rolling restart: argv = base URL, seconds.
"""

import json
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

base_url, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds


def one(index):
    body = json.dumps({"city": f"city-{index}", "location": "rolling"}).encode()
    request = urllib.request.Request(base_url + "/WeatherForecast/city", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError as error:
        return repr(error)


def loop(worker):
    results, index = [], worker * 1_000_000
    while time.monotonic() < deadline:
        results.append(one(index))
        index += 1
        time.sleep(0.05)
    return results


with ThreadPoolExecutor(max_workers=4) as pool:
    outcomes = [status for batch in pool.map(loop, range(4)) for status in batch]
failed = [status for status in outcomes if status != 200]
print(json.dumps({"sent": len(outcomes), "ok": len(outcomes) - len(failed), "failed": len(failed),
                  "failures": failed[:10]}))
sys.exit(1 if failed or not outcomes else 0)
