"""The Lua scripts Redis runs for the shared state: each is one atomic round trip (EVALSHA, else EVAL).

Counters are limits' fixed window, as in memory: a window opens with a client's first request (``SET … PX period``)
and its key expires when it ends, so ``PTTL`` is the truth about ``t=`` and ``Retry-After`` on every replica.
Cached answers are accounted in bytes under one cap shared by all replicas, least recently used first out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


# KEYS: one counter per limit. ARGV: each limit's amount and period (ms), in KEYS' order.
# All or nothing: when every counter has room the request counts in each (a new window starts at 1 and expires
# after its period); when one is full it counts in none. Returns {admitted, count1, pttl1, count2, pttl2, ...}:
# each count as it stands after this request, and the ms until its window ends (0: no window yet).
ACQUIRE = Script("""
local admitted = 1
local counts, ttls = {}, {}
for i, key in ipairs(KEYS) do
  local ttl = redis.call('PTTL', key)
  local count = 0
  if ttl > 0 then count = tonumber(redis.call('GET', key)) or 0 end
  counts[i], ttls[i] = count, ttl
  if count >= tonumber(ARGV[2 * i - 1]) then admitted = 0 end
end
local out = {admitted}
for i, key in ipairs(KEYS) do
  local count, ttl = counts[i], ttls[i]
  if admitted == 1 then
    if ttl > 0 then
      count = redis.call('INCR', key)
    else
      ttl = tonumber(ARGV[2 * i])
      redis.call('SET', key, 1, 'PX', ttl)
      count = 1
    end
  elseif ttl < 0 then
    ttl = 0
  end
  out[#out + 1] = count
  out[#out + 1] = ttl
end
return out
""")

# KEYS[1]: a counter. ARGV[1]: the period (ms). Counts one request whether or not it fits (limits' ``hit``).
HIT = Script("""
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then return {redis.call('INCR', KEYS[1]), ttl} end
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return {1, tonumber(ARGV[1])}
""")

# KEYS[1]: a counter. Returns {count, pttl} of its window, {0, 0} when none is open. Counts nothing.
WINDOW = Script("""
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return {0, 0} end
return {tonumber(redis.call('GET', KEYS[1])) or 0, ttl}
""")

# The cache's bookkeeping, shared by every replica: KEYS = entry, lru (zset: entry -> its last use, a number from
# the ticks counter, so two uses in the same millisecond still have an order), sizes (hash: entry -> bytes),
# bytes (the total), expiry (zset: entry -> end of life, ms), ticks (the counter of uses).

# KEYS: entry, lru, ticks. Returns the entry, and marks it the most recently used.
CACHE_GET = Script("""
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), KEYS[1])
end
return value
""")

# KEYS as above. ARGV: value, ttl (ms), size (bytes it counts for), cap (bytes for all entries).
# Forgets up to 16 entries that have expired, then the least recently used until the new one fits; 0 when it is
# larger than the cap (nothing is evicted for it).
CACHE_SET = Script("""
local entry, lru, sizes, total, expiry, ticks = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local ttl, size, cap = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if size > cap then return 0 end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function forget(member)
  local had = tonumber(redis.call('HGET', sizes, member))
  if had then
    redis.call('HDEL', sizes, member)
    redis.call('DECRBY', total, had)
  end
  redis.call('ZREM', lru, member)
  redis.call('ZREM', expiry, member)
end
for _, member in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 16)) do
  forget(member)
end
forget(entry)
local used = tonumber(redis.call('GET', total)) or 0
while used + size > cap do
  local oldest = redis.call('ZRANGE', lru, 0, 0)[1]
  if not oldest then  -- nothing left to evict, yet the total says full: the books drifted (a key deleted by hand)
    redis.call('DEL', sizes, total)
    used = 0
    break
  end
  forget(oldest)
  redis.call('DEL', oldest)
  used = tonumber(redis.call('GET', total)) or 0
end
redis.call('SET', entry, ARGV[1], 'PX', ttl)
redis.call('HSET', sizes, entry, size)
redis.call('INCRBY', total, size)
redis.call('ZADD', lru, redis.call('INCR', ticks), entry)
redis.call('ZADD', expiry, now + ttl, entry)
return 1
""")

# KEYS[1]: a lock. ARGV[1]: the holder's token. Deletes the lock only if this holder still has it.
UNLOCK = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

# Token budgets (state.reserve / state.settle): KEYS[1] a hash {spent, end, id}; end in ms of the server's clock
# (TIME); id a number from the counter KEYS[2], the window's identity: a settle applies only to the window its
# reservation was made in (an end in ms would not do: a window evicted and opened again within the same
# millisecond would have the same end).
# RESERVE: ARGV amount, limit, period (ms). Returns {admitted, spent, ms until the window ends, id}.
RESERVE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local stop = tonumber(redis.call('HGET', KEYS[1], 'end') or '0')
local id = tonumber(redis.call('HGET', KEYS[1], 'id') or '0')
if stop <= now or id == 0 then spent = 0; stop = now + tonumber(ARGV[3]); id = redis.call('INCR', KEYS[2]) end
local amount = tonumber(ARGV[1])
if spent + amount > tonumber(ARGV[2]) then return {0, spent, stop - now, id} end
spent = spent + amount
redis.call('HSET', KEYS[1], 'spent', spent, 'end', stop, 'id', id)
redis.call('PEXPIREAT', KEYS[1], stop)
return {1, spent, stop - now, id}
""")

# SETTLE: KEYS[1] as above. ARGV reserved, actual, id (the reservation's window). Returns {spent, ms until the
# window ends}.
SETTLE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stop = redis.call('HGET', KEYS[1], 'end')
if not stop then return {0, 0} end
stop = tonumber(stop)
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
if redis.call('HGET', KEYS[1], 'id') == ARGV[3] and stop > now then
  spent = math.max(0, spent - tonumber(ARGV[1]) + tonumber(ARGV[2]))
  redis.call('HSET', KEYS[1], 'spent', spent)
end
return {spent, math.max(0, stop - now)}
""")
