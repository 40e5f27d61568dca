-- The metrics view: every figure the Prometheus exporter publishes, so a scrape is one query.
CREATE VIEW {schema}.metrics AS
WITH per_queue AS (
    SELECT q.name AS queue,
           count(m.id) AS depth,
           count(m.id) FILTER (WHERE m.lease_token IS NULL AND m.visible_at <= now()) AS ready,
           count(m.id) FILTER (WHERE m.lease_token IS NULL AND m.visible_at > now()) AS delayed,
           count(m.id) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at > now()) AS leased,
           count(m.id) FILTER (WHERE m.lease_token IS NOT NULL AND m.visible_at <= now()) AS lease_expired,
           coalesce(sum(m.delivery_count - 1) FILTER (WHERE m.delivery_count > 1), 0) AS redeliveries,
           coalesce(extract(epoch FROM now() - min(m.created_at)), 0) AS oldest_age_seconds
    FROM {schema}.queue AS q
    LEFT JOIN {schema}.message AS m ON m.queue = q.name
    GROUP BY q.name
)
SELECT 'queue_' || f.metric AS metric, p.queue AS label, f.value::float8 AS value
FROM per_queue AS p
CROSS JOIN LATERAL (VALUES ('depth', p.depth::numeric), ('ready', p.ready), ('delayed', p.delayed),
                           ('leased', p.leased), ('lease_expired', p.lease_expired),
                           ('redeliveries', p.redeliveries), ('oldest_age_seconds', p.oldest_age_seconds))
    AS f (metric, value)
UNION ALL
SELECT 'dead_letters', d.queue, count(*)::float8
FROM {schema}.dead_letter AS d
GROUP BY d.queue
UNION ALL
SELECT 'workflows', s.status, count(w.id)::float8
FROM (VALUES ('running'), ('succeeded'), ('failed'), ('cancelled')) AS s (status)
LEFT JOIN {schema}.workflow AS w ON w.status = s.status
GROUP BY s.status
UNION ALL
SELECT 'workflows_stalled', '', count(*) FILTER (WHERE w.stalled)::float8
FROM {schema}.workflows AS w;
