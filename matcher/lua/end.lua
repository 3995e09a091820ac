-- end.lua: either side ends a session.
-- KEYS[1] match base
-- ARGV[1] sender id  ARGV[2] 'user' | 'astrologer'  ARGV[3] session id
-- ARGV[4] socket  ARGV[5] op  ARGV[6] ref (JSON)
-- Returns {'ok'} or {'err', code}: unavailable | not_found | already_ended
local uid, role, sid, now = ARGV[1], ARGV[2], ARGV[3], clock_ms()
if not require_alive() then return err('unavailable') end
local s = hgetall(k('sess:' .. sid))
if not s.rid then
  local done = redis.call('GET', k('sessdone:' .. sid))
  if done then
    local user, aid = string.match(done, '^(%S+) (%S+)$')
    if user == uid or aid == uid then return err('already_ended') end
  end
  return err('not_found')
end
if (role == 'user' and s.user ~= uid) or (role == 'astrologer' and s.aid ~= uid) then
  return err('not_found')
end
ack(uid, ARGV[4], ARGV[5], ARGV[6])
redis.call('DEL', k('sess:' .. sid))
redis.call('SET', k('sessdone:' .. sid), s.user .. ' ' .. s.aid, 'PX', 3600000)
redis.call('SREM', k('astsess:' .. s.aid), sid)
redis.call('HDEL', k('user:' .. s.user), 'sess')
add_load(s.aid, -1)
-- Average handle time for the ETA: EWMA, new = (3 old + sample) / 4.
local length_ms = now - tonumber(s.started)
local avg = tonumber(redis.call('HGET', k('etaparams'), 'avg_ms') or '0')
if avg <= 0 then avg = length_ms else avg = math.floor((3 * avg + length_ms) / 4) end
redis.call('HSET', k('etaparams'), 'avg_ms', avg)
pg('sess_end', {id = sid, by = role, at = now})
local frame = {type = 'session_ended', session_id = sid, ended_by = role}
emit(s.user, frame)
emit(s.aid, frame)
flush()
return {'ok'}
