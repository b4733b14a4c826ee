-- After the owner's publication of a fold is confirmed: the series that owed their zero point
-- (state/fold.py) owe it no more. A compare-and-set like fold.lua: only while the owner's token
-- is current and the slot still at the version that fold left (bumped here, so a repeated or
-- late request changes nothing), and only over records that still exist (a series refused,
-- expired or superseded by that fold is not brought back).
--
-- KEYS[1] = fencing tokens, KEYS[2] = the slot's version, KEYS[3] = the slot's records
-- ARGV[1] = slot, ARGV[2] = token, ARGV[3] = version, ARGV[4..] = digest, record, ...
-- Returns 'OK', 'FENCED' or 'STALE'.

if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 'FENCED'
end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then
  return 'STALE'
end
redis.call('INCR', KEYS[2])
for index = 4, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[3], ARGV[index]) == 1 then
    redis.call('HSET', KEYS[3], ARGV[index], ARGV[index + 1])
  end
end
return 'OK'
