-- cell_rows: the cell and temperature lists of the readings chosen by cell_select.sql,
-- and by charge_select.sql, deduplicated by (vin, seq). This is the one pass over the
-- partition's cell lists; cell_day.sql, step_cells.sql, rest_cells.sql and
-- charge_cells.sql read only these rows.
CREATE OR REPLACE TEMP TABLE cell_rows AS
WITH keys AS (
    -- for_cells: chosen by cell_select (cell_day.sql reads only those rows)
    SELECT vin, seq, bool_or(for_cells) AS for_cells
    FROM (
        SELECT vin, seq, TRUE AS for_cells FROM cell_select
        UNION ALL
        SELECT vin, seq, FALSE FROM charge_select
    )
    GROUP BY vin, seq
)
SELECT t.vin, t.seq, epoch_ms(t.ts) // 86400000 AS day_n, t.cell_mv, t.temp_dc, k.for_cells
FROM tele t
JOIN keys k ON t.vin = k.vin AND t.seq = k.seq
QUALIFY NOT getvariable('dedup')
    OR row_number() OVER (PARTITION BY t.vin, t.seq ORDER BY t.received_at, t.worker) = 1;
