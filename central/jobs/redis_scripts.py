"""The Lua scripts of the Redis job store (central/jobs/redis_store.py): every step that
must not race another replica, each run atomically by Redis. Key names and arguments are
as each script's comment says; times come from the server (`TIME`)."""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# A write about a running job by ARGV[1]: allowed unless the job is over or another
# replica holds a live lease; it (re)takes the lease. KEYS[1] lease, KEYS[2] hash.
_FENCE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return false end
"""

# KEYS: index, hash, stream, lease. ARGV: prefix, id, owner, lease_ms, ttl_ms, max_jobs,
# key zset ('' for none), key limit, queued event data, then the record's fields.
_CREATE = (
    _NOW
    + """
local function forget(id)
  local job = ARGV[1] .. 'job:' .. id
  redis.call('DEL', job, job .. ':events', job .. ':lease')
  redis.call('ZREM', KEYS[1], id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[5]))) do
  forget(id)
end
if ARGV[7] ~= '' then
  redis.call('ZREMRANGEBYSCORE', ARGV[7], '-inf', now)
  if redis.call('ZCARD', ARGV[7]) >= tonumber(ARGV[8]) then return 'key_full' end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[6]) then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(+inf', 'LIMIT', 0, 1)
  if #oldest == 0 then return 'full' end
  forget(oldest[1])
end
redis.call('HSET', KEYS[2], unpack(ARGV, 10))
redis.call('ZADD', KEYS[1], '+inf', ARGV[2])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
if ARGV[7] ~= '' then redis.call('ZADD', ARGV[7], '+inf', 'job:' .. ARGV[2]) end
redis.call('XADD', KEYS[3], '*', 'name', 'queued', 'data', ARGV[9])
return 'ok'
"""
)

# KEYS: lease, hash, stream. ARGV: owner, lease_ms, event name, event data, fields...
_UPDATE = (
    _FENCE
    + """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
return redis.call('XADD', KEYS[3], '*', 'name', ARGV[3], 'data', ARGV[4])
"""
)

# KEYS: lease, hash, stream, index. ARGV: owner, ttl_ms, event name, event data, prefix,
# id, fields...
_FINISH = (
    _FENCE
    + _NOW
    + """
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
local event_id = redis.call('XADD', KEYS[3], '*', 'name', ARGV[3], 'data', ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('ZADD', KEYS[4], now, ARGV[6])
-- Gone after the TTL (the index drops its id when a new job comes).
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local key = redis.call('HGET', KEYS[2], 'key')
if key and key ~= '' then
  redis.call('ZREM', ARGV[5] .. 'key:run:' .. key, 'job:' .. ARGV[6])
end
return event_id
"""
)

# ARGV: prefix, owner, lease_ms, job ids... -> {lost ids, ids asked to cancel}
_RENEW = """
local lost, cancel = {}, {}
for i = 4, #ARGV do
  local job = ARGV[1] .. 'job:' .. ARGV[i]
  local holder = redis.call('GET', job .. ':lease')
  local status = redis.call('HGET', job, 'status')
  local over = (not status) or status == 'succeeded' or status == 'failed'
    or status == 'cancelled'
  if not over then
    if holder and holder ~= ARGV[2] then
      table.insert(lost, ARGV[i])
    else
      redis.call('SET', job .. ':lease', ARGV[2], 'PX', ARGV[3])
      if redis.call('HGET', job, 'cancel') == '1' then table.insert(cancel, ARGV[i]) end
    end
  end
end
return {lost, cancel}
"""

# KEYS: index. ARGV: prefix -> unfinished jobs without a lease
_ORPHANS = """
local orphans = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '+inf', '+inf')) do
  if redis.call('EXISTS', ARGV[1] .. 'job:' .. id .. ':lease') == 0 then
    table.insert(orphans, id)
  end
end
return orphans
"""

# KEYS: index. ARGV: prefix, key, field names -> each unfinished job of that key: its
# values of those fields (not its request, which may carry images)
_UNFINISHED = """
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '+inf', '+inf')) do
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('HGET', job, 'key') == ARGV[2] then
    table.insert(found, redis.call('HMGET', job, unpack(ARGV, 3)))
  end
end
return found
"""

# KEYS: lease, hash. ARGV: owner, lease_ms -> the record's fields, or false
_CLAIM = """
if redis.call('EXISTS', KEYS[2]) == 0 then return false end
local status = redis.call('HGET', KEYS[2], 'status')
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then return false end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('HGETALL', KEYS[2])
"""

# KEYS: lease, hash. ARGV: owner
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: hash. ARGV: channel, id -> the record's fields before, or false
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local before = redis.call('HGETALL', KEYS[1])
local status = redis.call('HGET', KEYS[1], 'status')
if not (status == 'succeeded' or status == 'failed' or status == 'cancelled') then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  redis.call('PUBLISH', ARGV[1], 'cancel:' .. ARGV[2])
end
return before
"""

# KEYS: the key's zset. ARGV: token, limit, lease_ms -> 1, or 0 when at the limit
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

# ARGV: lease_ms, then (zset, token) pairs
_RENEW_SLOTS = (
    _NOW
    + """
for i = 2, #ARGV, 2 do
  redis.call('ZADD', ARGV[i], 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
end
return 1
"""
)


SCRIPTS: dict[str, str] = {
    "create": _CREATE,
    "update": _UPDATE,
    "finish": _FINISH,
    "renew": _RENEW,
    "orphans": _ORPHANS,
    "unfinished": _UNFINISHED,
    "claim": _CLAIM,
    "release": _RELEASE,
    "cancel": _CANCEL,
    "acquire": _ACQUIRE,
    "renew_slots": _RENEW_SLOTS,
}
