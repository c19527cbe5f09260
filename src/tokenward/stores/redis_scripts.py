"""The Lua scripts of the Redis store (`tokenward.stores.redis`), one per atomic operation.

Each runs atomically on the server and checks a version or an owner before it writes. They are
data, kept apart so that the store's module reads as Python. `_CLAIM_RECORDS` builds record
keys from a prefix argument instead of declaring them, so on Redis Cluster it needs every key
of the store in one slot (a hash tag in the prefix), as the others do.
"""

from __future__ import annotations

__all__ = ["SCRIPTS"]

# KEYS: record, index, due. ARGV: expected version, new version, data, record key, due time
# ('' when never due).
_CAS_WRITE = """
local current = redis.call('HGET', KEYS[1], 'version')
if ARGV[1] == '0' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'data', ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[4])
if ARGV[5] == '' then
  redis.call('ZREM', KEYS[3], ARGV[4])
else
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
end
"""
_CAS = _CAS_WRITE + "return 1\n"
# The steps several scripts take, as Lua functions each script that needs one starts with.
# claim: the due keys (at most `limit`), each pushed back to `claimed_until`.
_CLAIM_FN = """
local function claim(due, now, limit, claimed_until)
  local keys = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit)
  for _, key in ipairs(keys) do
    redis.call('ZADD', due, claimed_until, key)
  end
  return keys
end
"""
# take_lease: the lease for `owner`, with its holder identity ('' when none).
_TAKE_LEASE_FN = """
local function take_lease(lease, holder_key, owner, ttl, holder)
  redis.call('SET', lease, owner, 'PX', ttl)
  if holder == '' then
    redis.call('DEL', holder_key)
  else
    redis.call('SET', holder_key, holder, 'PX', ttl)
  end
end
"""
# mark: the refresh token `fp` in flight at `owner`, replacing any in-flight record.
_MARK_FN = """
local function mark(in_flight, owner, fp, ttl, holder)
  redis.call('DEL', in_flight)
  redis.call('HSET', in_flight, 'owner', owner, 'fp', fp, 'holder', holder)
  redis.call('PEXPIRE', in_flight, ttl)
end
"""
# KEYS: due. ARGV: now, limit, claimed until.
_CLAIM = _CLAIM_FN + "return claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"
# KEYS: record, due. ARGV: record key, due time ('' when never due). Only existing records.
_SCHEDULE = """
if ARGV[2] == '' then
  return redis.call('ZREM', KEYS[2], ARGV[1])
end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
"""
# KEYS: lease, holder. ARGV: owner, ttl in milliseconds, holder identity ('' when none).
_ACQUIRE = (
    _TAKE_LEASE_FN
    + """local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
take_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return 1
"""
)
# KEYS: lease, holder. ARGV: owner, ttl in milliseconds.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
# KEYS: lease, holder. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""
# KEYS: lease, holder. ARGV: dead owner, new owner, ttl in milliseconds, holder ('' when none).
_TAKE_OVER = (
    _TAKE_LEASE_FN
    + """if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
take_lease(KEYS[1], KEYS[2], ARGV[2], ARGV[3], ARGV[4])
return 1
"""
)
# KEYS: lease, holder. Returns {owner, ms left, holder} or {} when there is no lease.
_HOLDER = """
local owner = redis.call('GET', KEYS[1])
if not owner then return {} end
return {owner, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or ''}
"""
# KEYS: in-flight. ARGV: owner, fingerprint, ttl in milliseconds, holder ('' when none).
_MARK = _MARK_FN + "mark(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])\nreturn 1\n"
# KEYS: in-flight. Returns {owner, ms left, holder, fingerprint} or {}.
_IN_FLIGHT = """
local v = redis.call('HMGET', KEYS[1], 'owner', 'fp', 'holder')
if not v[1] then return {} end
return {v[1], redis.call('PTTL', KEYS[1]), v[3] or '', v[2]}
"""
# KEYS: in-flight. ARGV: owner.
_CLEAR = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""
# KEYS: record, lease, index, due, holder, in-flight. ARGV: record key.
_DELETE = """
redis.call('DEL', KEYS[2], KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return redis.call('DEL', KEYS[1])
"""
# KEYS: lease, holder, record, in-flight. ARGV: owner, ttl in milliseconds, holder identity
# ('' when none), mark: the record version it requires ('' for no mark), fingerprint, in-flight
# ttl in milliseconds. Returns {acquired, version, data, in-flight owner, ms left, holder,
# fingerprint, marked}: the in-flight record as it was before any mark.
_BEGIN = (
    _TAKE_LEASE_FN
    + _MARK_FN
    + """local current = redis.call('GET', KEYS[1])
local acquired = 0
if (not current) or current == ARGV[1] then
  take_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
  acquired = 1
end
local rec = redis.call('HMGET', KEYS[3], 'version', 'data')
if acquired == 0 then return {0, rec[1] or false, rec[2] or false} end
local f = redis.call('HMGET', KEYS[4], 'owner', 'fp', 'holder')
local left = -2
if f[1] then left = redis.call('PTTL', KEYS[4]) end
local marked = 0
if ARGV[4] ~= '' and rec[1] == ARGV[4]
    and ((not f[1]) or left < 0 or f[1] == ARGV[1] or f[2] ~= ARGV[5]) then
  mark(KEYS[4], ARGV[1], ARGV[5], ARGV[6], ARGV[3])
  marked = 1
end
return {1, rec[1] or false, rec[2] or false, f[1] or false, left, f[3] or false,
  f[2] or false, marked}
"""
)
# KEYS: record, index, due, in-flight, lease, holder. ARGV: the compare-and-set's five, owner,
# clear the in-flight record ('1') or not ('0').
_FINISH = (
    _CAS_WRITE
    + """if ARGV[7] == '1' and redis.call('HGET', KEYS[4], 'owner') == ARGV[6] then
  redis.call('DEL', KEYS[4])
end
if redis.call('GET', KEYS[5]) == ARGV[6] then
  redis.call('DEL', KEYS[5], KEYS[6])
end
return 1
"""
)
# KEYS: due. ARGV: now, limit, claimed until, the record keys' prefix. Returns key, version,
# data for each claimed key (a key whose record is gone comes back with no version).
_CLAIM_RECORDS = (
    _CLAIM_FN
    + """local out = {}
for _, key in ipairs(claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])) do
  local rec = redis.call('HMGET', ARGV[4] .. key, 'version', 'data')
  table.insert(out, key)
  table.insert(out, rec[1] or '')
  table.insert(out, rec[2] or '')
end
return out
"""
)
SCRIPTS = {
    "cas": _CAS,
    "acquire": _ACQUIRE,
    "renew": _RENEW,
    "release": _RELEASE,
    "del": _DELETE,
    "take_over": _TAKE_OVER,
    "holder": _HOLDER,
    "mark": _MARK,
    "in_flight": _IN_FLIGHT,
    "clear": _CLEAR,
    "claim": _CLAIM,
    "schedule": _SCHEDULE,
    "begin": _BEGIN,
    "finish": _FINISH,
    "claim_records": _CLAIM_RECORDS,
}
