-- Every request different (bench/http_bench.py, figure h1v): the path and a header carry a
-- counter, and the upstream echoes the path in a response header, so neither a request nor a
-- response is ever the same bytes twice and no proxy can serve one from what it saw before.
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v/" .. n, {["x-n"] = tostring(n)})
end
