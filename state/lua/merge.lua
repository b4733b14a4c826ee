-- One flush = one atomic step: check that this worker still owns every partition it reports,
-- record how far each partition is applied, and merge every series delta. Either all of it
-- happens or none of it does, which is what makes counting exactly-once.
--
-- ARGV[1] = msgpack {prefix, topic, fences, tenants, max_exemplars, exp_max_size, pending}
--   fences  = {{partition, token, next_offset}, ...}        (strings: exact for any size)
--   tenants = {{escaped, resources, series, overflow, limit}, ...}
--     resources = {{resource_id, attributes_blob}, ...}
--     series    = {{slot, digest, overflow_index, {meta, first_us, last_us, count, sum, buckets, exp, exemplars}}, ...}
--     overflow  = {{slot, digest, meta}, ...}  (the series that absorb new ones past the tenant limit)
--   pending = {{partition, blob}, ...}  service-graph half-edges as of these offsets ('' = none)
-- ARGV[2] = digest of ARGV[1]: the batch id. It is recorded for every fenced partition under
--   P:batch:<topic>; a batch whose id is already recorded there was applied and its reply lost
--   (the caller timed out and retried), so it is acknowledged without being applied again.
-- Returns {'OK', created, overflowed} (also for such a repeat, with 0, 0) or {'FENCED', partition}.

local batch = cmsgpack.unpack(ARGV[1])
local prefix, topic, fences, tenants = batch[1], batch[2], batch[3], batch[4]
local max_exemplars, max_size = batch[5], batch[6]
local fence_key = prefix .. ':fence:' .. topic
local offsets_key = prefix .. ':offsets:' .. topic

for _, fence in ipairs(fences) do
  if redis.call('HGET', fence_key, fence[1]) ~= fence[2] then
    return {'FENCED', fence[1]}
  end
end
local batch_key = prefix .. ':batch:' .. topic
local batch_id = ARGV[2]
if batch_id and #fences > 0 then
  if redis.call('HGET', batch_key, fences[1][1]) == batch_id then
    return {'OK', 0, 0}
  end
  for _, fence in ipairs(fences) do
    redis.call('HSET', batch_key, fence[1], batch_id)
  end
end
for _, fence in ipairs(fences) do
  local current = redis.call('HGET', offsets_key, fence[1])
  if fence[3] ~= '-1' and (current == false or tonumber(current) < tonumber(fence[3])) then
    redis.call('HSET', offsets_key, fence[1], fence[3])
  end
end

-- Half-edges waiting for their other side belong to the offsets just written: saving them in
-- the same step means a takeover (or a replay after a crash) resumes with exactly them.
for _, item in ipairs(batch[7] or {}) do
  local key = prefix .. ':edges:' .. topic .. ':' .. item[1]
  if #item[2] > 0 then
    redis.call('SET', key, item[2])
  else
    redis.call('DEL', key)
  end
end

local created, overflowed = 0, 0
for _, tenant in ipairs(tenants) do
  local root = prefix .. ':t:' .. tenant[1]
  redis.call('SADD', prefix .. ':tenants', tenant[1])
  for _, resource in ipairs(tenant[2]) do
    redis.call('HSETNX', root .. ':r', resource[1], resource[2])
  end
  local active_key = root .. ':n'
  local active = tonumber(redis.call('GET', active_key) or '0')
  local limit = tenant[5]
  local overflow = tenant[4]
  for _, item in ipairs(tenant[3]) do
    local key = root .. ':s:' .. item[1]
    local digest = item[2]
    local delta = item[4]
    local stored = redis.call('HGET', key, digest)
    if not stored and limit > 0 and active >= limit and item[3] > 0 then
      local target = overflow[item[3]]
      key = root .. ':s:' .. target[1]
      digest = target[2]
      delta[1] = target[3]
      overflowed = overflowed + delta[4]
      stored = redis.call('HGET', key, digest)
    end
    local record
    if stored then
      record = cmsgpack.unpack(stored)
      if delta[3] > record[3] then record[3] = delta[3] end
      record[4] = record[4] + delta[4]
      record[5] = record[5] + delta[5]
      record[6] = add_buckets(record[6], delta[6])
      record[7] = exp_merge(record[7], delta[7], max_size)
      local exemplars = record[8]
      for _, exemplar in ipairs(delta[8]) do
        if #exemplars >= max_exemplars then break end
        exemplars[#exemplars + 1] = exemplar
      end
    else
      record = delta
      while #record[8] > max_exemplars do table.remove(record[8]) end
      active = active + 1
      created = created + 1
    end
    redis.call('HSET', key, digest, cmsgpack.pack(record))
  end
  redis.call('SET', active_key, active)
end
return {'OK', created, overflowed}
