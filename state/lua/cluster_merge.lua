-- Cluster layout (state/cluster_store.py): one input partition's share of a flush, in one atomic
-- step under the partition's own hash tag. As merge.lua for one partition: check its owner's
-- fencing token (the tag's copy, raised by claims), check the step is newer than what the
-- partition applied, record its applied offset, watermark and pending half-edges, and append its
-- deltas to its outboxes, one per emission slot the rows belong to. The slots' owners pull the
-- outboxes later (cluster_pull.lua, cluster_fold.lua). Everything here hashes to one slot, so a
-- failed step wrote nothing: the step is applied whole or not at all.
--
-- KEYS[1] = token copy, KEYS[2] = applied offset, KEYS[3] = watermark '<token>:<sequence>',
-- KEYS[4] = pending half-edges, KEYS[5] = tenants with keys under the tag, KEYS[6] = the tag's
-- epoch (made from the server's clock when missing: outboxes that lost their data start a new
-- epoch, so the slots' cursors into the old one are not taken for positions in the new one),
-- KEYS[7..] = below
-- ARGV[1] = msgpack {token, next_offset, seen, pending, tenants}
--   next_offset = '-1' for none; seen = the offset the writer saw applied ('-1': none): less
--     stored means the state went back (a failover to a replica that was behind): refused
--   pending = {} to leave the half-edges alone, {blob} to store them ('' deletes)
--   tenants = {{escaped, resources_key, seen_key, resources, logs}, ...}
--     resources = {{resource_id, attributes_blob, last_seen_us}, ...} (as merge.lua)
--     logs = {{outbox_key, argv_index}, ...}: ARGV[argv_index] is appended to KEYS[outbox_key]
-- ARGV[2] = the step's sequence (merge.lua): applied only above the partition's watermark
-- Returns {'OK'}, {'SEEN'}, {'FENCED'} or {'BEHIND'}.

local step = cmsgpack.unpack(ARGV[1])
local token, next_offset, seen = step[1], step[2], step[3]
if redis.call('GET', KEYS[1]) ~= token then
  return {'FENCED'}
end
local current = redis.call('GET', KEYS[2])
if seen ~= '-1' and (current == false or tonumber(current) < tonumber(seen)) then
  return {'BEHIND'}
end
local mark = redis.call('GET', KEYS[3])
if mark then
  local marked, applied = string.match(mark, '^(%d+):(%d+)$')
  if marked == token and tonumber(applied) >= tonumber(ARGV[2]) then
    return {'SEEN'}
  end
end
redis.call('SET', KEYS[3], token .. ':' .. ARGV[2])
if redis.call('EXISTS', KEYS[6]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[6], now[1] .. string.format('%06d', tonumber(now[2])))
end
if next_offset ~= '-1' and (current == false or tonumber(current) < tonumber(next_offset)) then
  redis.call('SET', KEYS[2], next_offset)
end
local pending = step[4]
if #pending > 0 then
  if #pending[1] > 0 then
    redis.call('SET', KEYS[4], pending[1])
  else
    redis.call('DEL', KEYS[4])
  end
end
for _, tenant in ipairs(step[5]) do
  redis.call('SADD', KEYS[5], tenant[1])
  local resources, seen_key = KEYS[tenant[2]], KEYS[tenant[3]]
  for _, resource in ipairs(tenant[4]) do
    redis.call('HSETNX', resources, resource[1], resource[2])
    local last = resource[3]
    if last and last ~= '0' then
      local held = redis.call('HGET', seen_key, resource[1])
      if held == false or tonumber(held) < tonumber(last) then
        redis.call('HSET', seen_key, resource[1], last)
      end
    end
  end
  for _, log in ipairs(tenant[5]) do
    redis.call('RPUSH', KEYS[log[1]], ARGV[log[2]])
  end
end
return {'OK'}
