-- Named queries of the metrics exporter. {schema} is the configured schema.

-- scrape_bound --
-- A scrape's transaction gives up after %(ms)s milliseconds, lock waits included, so a scrape nobody
-- awaits any more does not keep the database working (or holding back VACUUM with its snapshot).
-- No JIT: compiling the view's plan would cost more than running it.
SELECT set_config('statement_timeout', %(ms)s, true), set_config('jit', 'off', true)

-- metrics_scrape --
-- Every figure of one scrape in one statement, from the metrics view (metric, label, value).
SELECT metric, label, value FROM {schema}.metrics ORDER BY metric, label
