-- The writes workload: wrk sends every request as this POST of one new item.
wrk.method = "POST"
wrk.body = '{"name": "bench", "description": "written by wrk"}'
wrk.headers["Content-Type"] = "application/json"
