-- Named queries of the metrics exporter. {schema} is the configured schema.

-- metrics_scrape --
-- Every figure of one scrape in one statement, from the metrics view (metric, label, value).
SELECT metric, label, value FROM {schema}.metrics ORDER BY metric, label
