-- wrk script shared by every lane of bench/run, so that each lane pays the same load-generator
-- cost: it rotates `Authorization: Bearer <key>` over the keys in $BENCH_KEYS (one per line).
-- Lanes that ignore the header (direct, nginx, passthrough) still send it.
--
-- $BENCH_DELAY_MS (optional): mean pause in ms between a response and the next request on each
-- connection, which turns wrk into a (closed-loop) fixed-rate generator: rate ~= connections /
-- (delay + latency). Fractional means are honoured by picking floor/ceil at random.
--
-- done() prints one machine-readable line:
--   BENCH_RESULT requests=<n> duration_us=<n> rps=<x> non2xx=<n> errors=<n> p50_us=<n> p99_us=<n> p999_us=<n>

local requests = {}
local count = 0
local index = 0
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "")

function init(args)
  local path = os.getenv("BENCH_KEYS")
  local file = path and io.open(path, "r")
  if not file then
    error("BENCH_KEYS must name a readable file of API keys, one per line")
  end
  for line in file:lines() do
    if #line > 0 then
      count = count + 1
      requests[count] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. line })
    end
  end
  file:close()
  if count == 0 then
    error("no keys in " .. path)
  end
  -- Threads start at different offsets; deterministic per thread id is not needed.
  index = math.random(count) - 1
end

function request()
  index = index + 1
  if index > count then
    index = 1
  end
  return requests[index]
end

if delay_ms then
  local base = math.floor(delay_ms)
  local frac = delay_ms - base
  function delay()
    if math.random() < frac then
      return base + 1
    end
    return base
  end
end

function done(summary, latency, _)
  local e = summary.errors
  local duration_s = summary.duration / 1e6
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d rps=%.1f non2xx=%d errors=%d p50_us=%d p99_us=%d p999_us=%d\n",
    summary.requests, summary.duration, summary.requests / duration_s, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
