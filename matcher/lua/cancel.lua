-- cancel.lua: a user withdraws its open request.
-- KEYS[1] match base
-- ARGV[1] user id  ARGV[2] request id  ARGV[3] socket  ARGV[4] op  ARGV[5] ref (JSON)
-- Returns {'ok'} or {'err', code}: unavailable | not_found (not the sender's, or no longer open)
local uid, rid, now = ARGV[1], ARGV[2], clock_ms()
if not require_alive() then return err('unavailable') end
local req = hgetall(k('req:' .. rid))
if req.user ~= uid then return err('not_found') end
ack(uid, ARGV[3], ARGV[4], ARGV[5])
if req.state == 'offered' then withdraw(req.offer, 'cancelled', now) end
end_request(rid, req, 'cancelled', 'user', now)
flush()
return {'ok'}
