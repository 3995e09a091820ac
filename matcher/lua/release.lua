-- release.lua: give the lease up on a clean stop, so a standby takes over at once.
-- KEYS[1] match base
-- ARGV[1] this matcher's id
-- Returns 1 when this matcher held it.
if redis.call('GET', k('lease')) == ARGV[1] then
  redis.call('DEL', k('lease'), k('fence'))
  return 1
end
return 0
