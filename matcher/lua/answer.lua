-- answer.lua: an astrologer accepts or declines an offer.
-- KEYS[1] match base
-- ARGV[1] astrologer id  ARGV[2] offer id  ARGV[3] 'accept' | 'decline'
-- ARGV[4] new session id ARGV[5] socket  ARGV[6] op  ARGV[7] ref (JSON)
-- Returns {'ok'} or {'err', code}: unavailable | not_found (never this astrologer's)
--   | offer_expired (it was, but it expired, was withdrawn or already answered).
-- Race: the offer timer and the answer both run as scripts; whichever runs
-- first wins, and the loser sees the offer gone (offer_expired).
local aid, oid, verb, sid, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], clock_ms()
if not require_alive() then return err('unavailable') end
local offer = hgetall(k('offer:' .. oid))
if not offer.rid then
  if redis.call('GET', k('offerdone:' .. oid)) == aid then return err('offer_expired') end
  return err('not_found')
end
if offer.aid ~= aid then return err('not_found') end
if tonumber(offer.exp) <= now then return err('offer_expired') end
local rid = offer.rid
local req = hgetall(k('req:' .. rid))
if not req.user then return err('offer_expired') end
local a = k('ast:' .. aid)
redis.call('HSET', a, 'missed', 0)
if verb == 'decline' then
  ack(aid, ARGV[5], ARGV[6], ARGV[7])
  close_offer(oid, offer, 'declined', now)
  add_load(aid, -1)
  if req.aid == '' then
    requeue(rid, req, aid)
  else
    end_request(rid, req, 'cancelled', 'declined', now)
  end
  flush()
  return {'ok'}
end
-- accept: the offer's capacity slot becomes the session's.
local aname = redis.call('HGET', a, 'name')
ack(aid, ARGV[5], ARGV[6], ARGV[7], {session_id = sid})
close_offer(oid, offer, 'accepted', now)
end_request(rid, req, 'assigned', '', now)
redis.call('HSET', k('user:' .. req.user), 'sess', sid)
redis.call('HSET', k('sess:' .. sid), 'rid', rid, 'user', req.user, 'uname', req.uname,
           'aid', aid, 'aname', aname, 'kind', req.kind, 'started', now)
redis.call('SADD', k('astsess:' .. aid), sid)
pg('sess', {id = sid, rid = rid, user = req.user, aid = aid, kind = req.kind, at = now})
emit(req.user, {type = 'assigned', request_id = rid, session_id = sid,
                astrologer = {id = aid, name = aname}})
emit(aid, {type = 'assigned', request_id = rid, session_id = sid,
           user = {id = req.user, name = req.uname}})
local line = 'general'
if req.aid ~= '' then line = 'direct' end
metric('wait', line, now - tonumber(req.created))
flush(true)  -- no load, line, status or flow changed: nothing for a new decision
return {'ok'}
