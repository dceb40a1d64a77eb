-- cell_rows: the cell and temperature lists of the readings chosen by cell_select.sql,
-- charge_select.sql and relax_select.sql, deduplicated by (vin, seq). This is the one pass over the
-- unit's cell lists; cell_day.sql, step_cells.sql, rest_cells.sql, charge_cells.sql
-- and rest_relax.sql read only these rows.
--
-- It runs once for the whole unit (view `tele` over all its files; `cell_select` and
-- `charge_select` are every vehicle group's, registered by bms._analytics), after the
-- groups' readings passes and before their cell jobs: run per group, a file or row
-- group holding vehicles of two groups had its lists decoded twice (the lists are
-- decoded whole even for the few rows a filter keeps).
WITH keys AS (
    -- for_cells: chosen by cell_select (cell_day.sql reads only those rows)
    SELECT vin, seq, bool_or(for_cells) AS for_cells
    FROM (
        SELECT vin, seq, TRUE AS for_cells FROM cell_select
        UNION ALL
        SELECT vin, seq, FALSE FROM charge_select
        UNION ALL
        SELECT vin, seq, FALSE FROM relax_select
    )
    GROUP BY vin, seq
)
SELECT t.vin, t.seq, epoch_ms(t.ts) // 86400000 AS day_n, t.cell_mv, t.temp_dc, k.for_cells
FROM tele t
JOIN keys k ON t.vin = k.vin AND t.seq = k.seq
QUALIFY NOT getvariable('dedup')
    OR row_number() OVER (PARTITION BY t.vin, t.seq ORDER BY t.received_at, t.worker) = 1;
