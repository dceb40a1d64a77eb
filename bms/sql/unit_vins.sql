-- unit_vins: per VIN of a unit's files (view `unit_rows`, the files in their order): its
-- rows, the position of its first row, in how many runs of consecutive rows the files
-- hold it, how many of its rows do not follow the one before in (ts, seq) order, and
-- how many do not carry a higher seq than the one before (none, in one run: its seqs
-- are all distinct). The empty OVER () reads the rows once, in file order, on one
-- thread: no sort.
WITH steps AS (
    SELECT
        vin,
        row_number() OVER () AS row_n,
        lag(vin) OVER () IS DISTINCT FROM vin AS run_start,
        coalesce(ts > lag(ts) OVER () OR (ts = lag(ts) OVER () AND seq > lag(seq) OVER ()), FALSE)
            AS in_order,
        coalesce(seq > lag(seq) OVER (), FALSE) AS seq_up
    FROM unit_rows
)
SELECT
    vin,
    count(*) AS n_rows,
    min(row_n) AS first_row,
    count(*) FILTER (WHERE run_start) AS runs,
    count(*) FILTER (WHERE NOT run_start AND NOT in_order) AS out_of_order,
    count(*) FILTER (WHERE NOT run_start AND NOT seq_up) AS seq_not_up
FROM steps
GROUP BY vin
ORDER BY vin;
