-- request.lua: a user asks for a consultation (SPEC §4 `request`).
-- KEYS[1] match base
-- ARGV[1] user id        ARGV[2] user name     ARGV[3] new request id
-- ARGV[4] kind           ARGV[5] astrologer id ('' = general line)
-- ARGV[6] socket id      ARGV[7] op handle     ARGV[8] ref (JSON)
-- ARGV[9] max wait (ms, 0 = none)
-- Returns {'ok'} or {'err', code}: unavailable | already_open | not_found | astrologer_offline
local uid, uname, rid, kind, aid = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local now, max_wait_ms = clock_ms(), tonumber(ARGV[9])
if not require_alive() then return err('unavailable') end
if redis.call('EXISTS', k('user:' .. uid)) == 1 then return err('already_open') end
if aid ~= '' then
  if redis.call('SISMEMBER', k('asts'), aid) == 0 then return err('not_found') end
  local status = redis.call('HGET', k('ast:' .. aid), 'status')
  if status ~= 'online' and status ~= 'break' then return err('astrologer_offline') end
end
local seq = redis.call('INCR', k('seq'))
local req = {id = rid, user = uid, uname = uname, kind = kind, aid = aid, seq = seq,
             created = now, state = 'waiting', offer = ''}
redis.call('HSET', k('req:' .. rid), 'id', rid, 'user', uid, 'uname', uname, 'kind', kind,
           'aid', aid, 'seq', seq, 'created', now, 'state', 'waiting', 'offer', '')
enqueue_request(rid, req)
redis.call('HSET', k('owner'), rid, uid)
redis.call('HSET', k('user:' .. uid), 'req', rid)
if max_wait_ms > 0 then redis.call('ZADD', k('deadline:wait'), now + max_wait_ms, rid) end
local position = position_of(req)
local eta = eta_of(req, position)
pg('req', {id = rid, user = uid, kind = kind, aid = aid, seq = seq, at = now})
ack(uid, ARGV[6], ARGV[7], ARGV[8], {request_id = rid})
emit(uid, {type = 'queued', request_id = rid, position = position, eta_seconds = eta})
metric('pos', rid, {position, eta})
flush()
return {'ok'}
