"""The floor of a worker's CPU per request: plain redis-py, one XREADGROUP of up to 100
entries, then the replies' XADDs and one XACK in one pipeline. No leases, claims,
deadlines, metrics, dead letters or replicas: what the real worker is measured against.

python -m bench.minimal_worker REDIS_URL STREAM GROUP
"""

import sys

import orjson
import redis

url, stream, group = sys.argv[1:4]
client = redis.Redis.from_url(url)
try:
    client.xgroup_create(stream, group, id="0", mkstream=True)
except redis.ResponseError as error:
    if "BUSYGROUP" not in str(error):
        raise
while True:
    read = client.xreadgroup(group, "minimal", {stream: ">"}, count=100, block=1000)
    if not read:
        continue
    entries = read[0][1]
    pipe = client.pipeline(transaction=False)
    for _, fields in entries:
        body = orjson.loads(fields[b"body"])
        reply = {b"id": fields[b"id"], b"status": b"ok",
                 b"body": orjson.dumps({"city": body["city"], "location": body["location"], "temperatureC": 21})}
        if b"cid" in fields:
            reply[b"cid"] = fields[b"cid"]
        pipe.xadd(fields[b"reply_to"], reply, maxlen=10_000, approximate=True)
    pipe.xack(stream, group, *(entry_id for entry_id, _ in entries))
    pipe.execute()
