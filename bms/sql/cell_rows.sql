-- cell_rows: the cell and temperature lists of the readings chosen by cell_select.sql,
-- deduplicated by (vin, seq). This is the one pass over the partition's cell lists;
-- cell_day.sql, step_cells.sql and rest_cells.sql read only these rows.
CREATE OR REPLACE TEMP TABLE cell_rows AS
WITH keys AS (SELECT DISTINCT vin, seq FROM cell_select)
SELECT t.vin, t.seq, epoch_ms(t.ts) // 86400000 AS day_n, t.cell_mv, t.temp_dc
FROM tele t
SEMI JOIN keys k ON t.vin = k.vin AND t.seq = k.seq
QUALIFY NOT getvariable('dedup')
    OR row_number() OVER (PARTITION BY t.vin, t.seq ORDER BY t.received_at, t.worker) = 1;
