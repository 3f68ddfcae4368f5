"""The atomic steps of the Redis job store, as Lua scripts.

Each script touches the keys of one hash slot only (one job's keys, or the
queue's), so the store runs on Redis Cluster too; a step that spans both is
two scripts, ordered so that a crash between them leaves nothing a later
claim cannot clean up. Lease times come from Redis's own clock (``TIME``), so
gateways with skewed clocks agree on when a lease has run out.

The job hash's ``owner`` and ``epoch`` fence its writers: ``take`` makes the
claimer the owner with a new epoch, and ``append``, ``renew`` and ``release``
refuse a caller whose owner/epoch is stale (``LEASE_LOST``), so a gateway
that was presumed dead can never write over its successor.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function ended(state)
  return state == '3' or state == '4' or state == '5'
end
"""

# KEYS: job hash, events. ARGV: ttl_s, first event, field/value pairs.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('XADD', KEYS[2], '1-0', 'e', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
"""

# KEYS: pending, active, leases. ARGV: job id, max admitted, wake channel.
# Returns {admitted (1/0), running, waiting}.
ADMIT = _PRELUDE + """
local running = redis.call('ZCARD', KEYS[3])
local waiting = redis.call('LLEN', KEYS[1])
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return {0, running, waiting} end
redis.call('ZADD', KEYS[2], now_ms(), ARGV[1])
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return {1, running, waiting}
"""

# KEYS: pending, leases. ARGV: max running, lease ms, take orphans (1/0).
# Returns {job id, orphan (1/0)} or false. Orphans (expired leases) come first.
CLAIM = _PRELUDE + """
local now = now_ms()
local lease_until = now + tonumber(ARGV[2])
if ARGV[3] == '1' then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1)
  if #expired > 0 then
    redis.call('ZADD', KEYS[2], lease_until, expired[1])
    return {expired[1], 1}
  end
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then return false end
local job = redis.call('LPOP', KEYS[1])
if not job then return false end
redis.call('ZADD', KEYS[2], lease_until, job)
return {job, 0}
"""

# KEYS: pending, leases. ARGV: job id, lease ms. Takes one queued job out of the queue.
CLAIM_QUEUED = _PRELUDE + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: job hash. ARGV: owner, lease ms.
# Returns {'ok', previous holder, hash as a flat list} | {'held', lease until} | {'missing'} | {'ended'}.
TAKE = _PRELUDE + """
local now = now_ms()
local f = redis.call('HMGET', KEYS[1], 'state', 'owner', 'lease_until', 'holder')
if not f[1] then return {'missing'} end
if ended(f[1]) then return {'ended'} end
if f[2] ~= '' and f[2] ~= ARGV[1] and tonumber(f[3]) > now then return {'held', f[3]} end
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'holder', ARGV[1], 'lease_until', now + tonumber(ARGV[2]))
return {'ok', f[4], redis.call('HGETALL', KEYS[1])}
"""

# KEYS: job hash. ARGV: owner, epoch, lease ms.
# Returns {lease until, cancel reason or ''}, or {0} when the lease is lost.
RENEW = _PRELUDE + """
local f = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'cancel')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return {0} end
local lease_until = now_ms() + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'lease_until', lease_until)
return {lease_until, f[3] or ''}
"""

# KEYS: job hash, events. ARGV: owner, epoch, seq, event, live event ('' = the same),
# state, stage, percent, terminal (1/0), ttl_s, max events, live channel, field/value pairs.
# Returns the seq, or 0 when that seq was stored already (a retried write).
APPEND = _PRELUDE + """
local f = redis.call('HMGET', KEYS[1], 'owner', 'epoch', 'last_seq')
if not f[3] then return redis.error_reply('LEASE_LOST the job is gone') end
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return redis.error_reply('LEASE_LOST held by another gateway') end
local seq = tonumber(ARGV[3])
local last = tonumber(f[3])
if seq <= last then return 0 end
if seq ~= last + 1 then return redis.error_reply('SEQ_GAP the next seq is ' .. (last + 1)) end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[11], seq .. '-0', 'e', ARGV[4])
redis.call('HSET', KEYS[1], 'last_seq', seq, 'state', ARGV[6], 'stage', ARGV[7], 'percent', ARGV[8])
if #ARGV > 12 then redis.call('HSET', KEYS[1], unpack(ARGV, 13)) end
if ARGV[9] == '1' then
  redis.call('HSET', KEYS[1], 'owner', '', 'ended_ms', now_ms())
  redis.call('EXPIRE', KEYS[1], ARGV[10])
  redis.call('EXPIRE', KEYS[2], ARGV[10])
end
local live = ARGV[5]
if live == '' then live = ARGV[4] end
redis.call('PUBLISH', ARGV[12], live)
return seq
"""

# KEYS: job hash. ARGV: owner, epoch. Gives the job up (1), unless it is not ours (0).
RELEASE = """
local f = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
if f[1] ~= ARGV[1] or f[2] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'owner', '', 'lease_until', 0)
return 1
"""

# KEYS: job hash. ARGV: reason. Returns {'ok', reason in force} | {'missing'} | {'ended'}.
CANCEL = _PRELUDE + """
local f = redis.call('HMGET', KEYS[1], 'state', 'cancel')
if not f[1] then return {'missing'} end
if ended(f[1]) then return {'ended'} end
if f[2] then return {'ok', f[2]} end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
return {'ok', ARGV[1]}
"""

# KEYS: leases, active, pending. ARGV: job id, wake channel. The job's running slot is free.
FORGET = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""

# KEYS: leases, pending. ARGV: job id, wake channel. Puts a released job first in the queue.
REQUEUE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Scripts:
    """The scripts, registered on one client (EVALSHA, loading them again after a Redis restart)."""

    create: AsyncScript
    admit: AsyncScript
    claim: AsyncScript
    claim_queued: AsyncScript
    take: AsyncScript
    renew: AsyncScript
    append: AsyncScript
    release: AsyncScript
    cancel: AsyncScript
    forget: AsyncScript
    requeue: AsyncScript

    @classmethod
    def register(cls, client: aioredis.Redis) -> Scripts:
        """Registers every script on ``client``."""
        return cls(*(client.register_script(source) for source in (
            CREATE, ADMIT, CLAIM, CLAIM_QUEUED, TAKE, RENEW, APPEND, RELEASE, CANCEL, FORGET, REQUEUE)))
