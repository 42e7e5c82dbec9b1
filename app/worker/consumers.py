"""Removing consumers that are gone from the consumer group."""

from __future__ import annotations

from app.shared.connections import RedisClient

# Removes consumers idle past a threshold with nothing pending, atomically: a consumer
# that took an entry between a check and the delete would lose it from the group.
_REMOVE_GONE_CONSUMERS = """
local removed = {}
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(removed, info['name'])
  end
end
return removed
"""


class ConsumerJanitor:
    def __init__(self, client: RedisClient, group: str, me: str) -> None:
        self._script = client.register_script(_REMOVE_GONE_CONSUMERS)
        self._group = group
        self._me = me

    def remove_gone(self, request_stream: str, idle_ms: int) -> list[str]:
        removed = self._script(keys=[request_stream], args=[self._group, self._me, idle_ms])
        return [name.decode() for name in removed]
