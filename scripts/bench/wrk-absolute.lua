-- wrk request script for scripts/bench.py.
--
-- wrk connects to the host:port of its URL argument (the proxy under test, or
-- the origin for "direct"). With BENCH_TARGET set, the request line carries
-- that absolute URL (absolute-form, RFC 9112 section 3.2.2) and Host names the
-- origin, which is what a client sends to a forward proxy. BENCH_CLOSE=1 adds
-- "Connection: close": the server closes after each response and wrk opens a
-- new TCP connection for the next request.
--
-- done() prints one line "BENCH_JSON {...}" that bench.py parses.

local target = os.getenv("BENCH_TARGET")
local host = os.getenv("BENCH_HOST")
if target and target ~= "" then
   wrk.path = target
end
if host and host ~= "" then
   wrk.headers["Host"] = host
end
if os.getenv("BENCH_CLOSE") == "1" then
   wrk.headers["Connection"] = "close"
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, '
      .. '"status_errors": %d, "timeout_errors": %d, '
      .. '"p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.mean))
end
