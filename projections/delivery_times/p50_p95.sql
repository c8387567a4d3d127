-- Median and 95th percentile of created -> delivered per restaurant, in
-- seconds: psql "$DATABASE_URL" -f projections/delivery_times/p50_p95.sql
-- (foodpipe reads only schema.sql and apply.sql from a projection's folder.)
SELECT restaurant_id,
       count(*) AS delivered,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM total)) AS p50_seconds,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM total)) AS p95_seconds
FROM delivery_times
WHERE delivered_at IS NOT NULL
GROUP BY restaurant_id
ORDER BY restaurant_id;
