-- One flush = one atomic step: check that this worker still owns every partition it reports,
-- check that the step is newer than what those partitions have applied, record how far each
-- partition is applied, and append every series delta to the delta log of the slot the series
-- belongs to. Either all of it happens or none of it does, which is what makes counting
-- exactly-once. The slot's owner folds the log into the slot's records when it emits (fold.lua),
-- so Redis does a handful of commands per slot here, not work per series.
--
-- ARGV[1] = msgpack {prefix, topic, fences, tenants, pending}
--   fences  = {{partition, token, next_offset, seen}, ...}  (strings: exact for any size)
--     seen = the offset the writer saw applied ('-1': none): a partition holding less than that
--     went back (a failover to a replica that was behind), and the step is refused
--   tenants = {{escaped, resources, logs}, ...}
--     resources = {{resource_id, attributes_blob, last_seen_us}, ...}  (last seen: a string,
--       '0' for none; the resource's last-seen time is raised to it, a max: a replay is a no-op)
--     logs      = {{slot, argv_index}, ...}  ARGV[argv_index] is the slot's log entry: packed rows
--   pending = {{partition, blob}, ...}  service-graph half-edges as of these offsets ('' = none)
-- ARGV[2] = the step's sequence number: strictly increasing per writer within a token's epoch,
--   the same for a retry. Each partition's watermark P:applied:<topic> holds the last applied
--   '<token>:<sequence>'; a step applies only if its sequence is above the watermark of every
--   partition it reports (under the same token), so a retry whose reply was lost, a duplicate
--   and a late step overtaken by a newer one all change nothing. (Offsets cannot tell: a step
--   of service-graph expiries carries deltas but no new offsets.)
-- Returns {'OK'}, {'SEEN', partition} for such a no-op, {'FENCED', partition} or
-- {'BEHIND', partition}.

local batch = cmsgpack.unpack(ARGV[1])
local prefix, topic, fences, tenants = batch[1], batch[2], batch[3], batch[4]
local fence_key = prefix .. ':fence:' .. topic
local offsets_key = prefix .. ':offsets:' .. topic

for _, fence in ipairs(fences) do
  if redis.call('HGET', fence_key, fence[1]) ~= fence[2] then
    return {'FENCED', fence[1]}
  end
end
for _, fence in ipairs(fences) do
  if fence[4] ~= '-1' then
    local current = redis.call('HGET', offsets_key, fence[1])
    if current == false or tonumber(current) < tonumber(fence[4]) then
      return {'BEHIND', fence[1]}
    end
  end
end
local marks_key = prefix .. ':applied:' .. topic
local sequence = tonumber(ARGV[2])
for _, fence in ipairs(fences) do
  local mark = redis.call('HGET', marks_key, fence[1])
  if mark then
    local token, applied = string.match(mark, '^(%d+):(%d+)$')
    if token == fence[2] and tonumber(applied) >= sequence then
      return {'SEEN', fence[1]}
    end
  end
end
for _, fence in ipairs(fences) do
  redis.call('HSET', marks_key, fence[1], fence[2] .. ':' .. ARGV[2])
end
for _, fence in ipairs(fences) do
  local current = redis.call('HGET', offsets_key, fence[1])
  if fence[3] ~= '-1' and (current == false or tonumber(current) < tonumber(fence[3])) then
    redis.call('HSET', offsets_key, fence[1], fence[3])
  end
end

-- Half-edges waiting for their other side belong to the offsets just written: saving them in
-- the same step means a takeover (or a replay after a crash) resumes with exactly them.
for _, item in ipairs(batch[5] or {}) do
  local key = prefix .. ':edges:' .. topic .. ':' .. item[1]
  if #item[2] > 0 then
    redis.call('SET', key, item[2])
  else
    redis.call('DEL', key)
  end
end

for _, tenant in ipairs(tenants) do
  local root = prefix .. ':t:' .. tenant[1]
  redis.call('SADD', prefix .. ':tenants', tenant[1])
  for _, resource in ipairs(tenant[2]) do
    redis.call('HSETNX', root .. ':r', resource[1], resource[2])
    local seen = resource[3]
    if seen and seen ~= '0' then
      local current = redis.call('HGET', root .. ':seen', resource[1])
      if current == false or tonumber(current) < tonumber(seen) then
        redis.call('HSET', root .. ':seen', resource[1], seen)
      end
    end
  end
  for _, log in ipairs(tenant[3]) do
    redis.call('RPUSH', root .. ':d:' .. log[1], ARGV[log[2]])
  end
end
return {'OK'}
