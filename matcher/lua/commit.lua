-- commit.lua: makes the offers the flow algorithm decided, each re-checked.
-- KEYS[1] match base
-- ARGV[1] fencing token  ARGV[2] offer timeout (ms)
-- ARGV[3] the flow algorithm's new state (JSON, stored as is)
-- ARGV[4..] groups of four: offer id, request id, astrologer id, direct ('1' | '0')
-- Returns {'ok', offers made, its outbox entry's id or ''} or {'err', 'fenced' | 'unavailable'}.
-- The snapshot was read in an earlier script, so the world may have moved
-- (a cancel, a status change): an offer whose request no longer waits or whose
-- astrologer is no longer free is skipped, and the next pass decides again.
if redis.call('GET', k('fence')) ~= ARGV[1] then return err('fenced') end
if not require_alive() then return err('unavailable') end
local now, timeout_ms = clock_ms(), tonumber(ARGV[2])
local made = 0

-- SPEC §6: within a line requests are offered oldest first. The snapshot may be
-- stale (a declined request came back to the head since): an offer that would
-- pass over an older request this astrologer could take is skipped.
local function passes_over_older(req, aid)
  local older = redis.call('ZRANGEBYSCORE', line_of(req), '-inf', '(' .. req.seq, 'LIMIT', 0, 64)
  for _, rid in ipairs(older) do
    if req.aid ~= '' or redis.call('SISMEMBER', k('excl:' .. rid), aid) == 0 then return true end
  end
  return false
end

for i = 4, #ARGV, 4 do
  local oid, rid, aid, direct = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local req = hgetall(k('req:' .. rid))
  local a = redis.call('HMGET', k('ast:' .. aid), 'status', 'capacity', 'load')
  local ok = req.state == 'waiting' and a[1] == 'online'
    and tonumber(a[3] or '0') < tonumber(a[2])
    and redis.call('SISMEMBER', k('excl:' .. rid), aid) == 0
    and ((direct == '1' and req.aid == aid) or (direct == '0' and req.aid == ''))
    and not passes_over_older(req, aid)
  if ok then
    redis.call('ZREM', line_of(req), rid)
    redis.call('HSET', k('req:' .. rid), 'state', 'offered', 'offer', oid)
    local exp = now + timeout_ms
    redis.call('HSET', k('offer:' .. oid), 'rid', rid, 'aid', aid, 'direct', direct,
               'created', now, 'exp', exp)
    redis.call('ZADD', k('deadline:offers'), exp, oid)
    redis.call('SADD', k('astoffers:' .. aid), oid)
    redis.call('HINCRBY', k('ast:' .. aid), 'load', 1)
    redis.call('HSET', k('ast:' .. aid), 'idle', now)
    touch(aid)
    pg('offer', {id = oid, rid = rid, aid = aid, direct = direct == '1', at = now, exp = exp})
    emit(aid, {type = 'offer', offer_id = oid, request_id = rid, kind = req.kind,
               direct = direct == '1', user = {id = req.user, name = req.uname},
               expires_in = timeout_ms / 1000})
    metric('offered', rid)
    made = made + 1
  else
    touch(aid)  -- its row in the matcher's roster may be what was stale: read it again
  end
end
redis.call('SET', k('stretch'), ARGV[3])
return {'ok', made, flush() or ''}
