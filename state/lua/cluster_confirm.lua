-- Cluster layout: confirm.lua against the slot's own token copy (the fencing hash lives in the
-- control tag, another hash slot).
--
-- KEYS[1] = the slot's token copy, KEYS[2] = the slot's version, KEYS[3] = the slot's records
-- ARGV[1] = token, ARGV[2] = version, ARGV[3..] = digest, record, ...
-- Returns 'OK', 'FENCED' or 'STALE'.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 'FENCED'
end
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[2] then
  return 'STALE'
end
redis.call('INCR', KEYS[2])
for index = 3, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[3], ARGV[index]) == 1 then
    redis.call('HSET', KEYS[3], ARGV[index], ARGV[index + 1])
  end
end
return 'OK'
