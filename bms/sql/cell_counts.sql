-- cell_counts: per vehicle, day and cell, in how many of the day's readings the cell was
-- the lowest (n_min) and the highest (n_max), with the day's readings (n_readings, on
-- every row of the day: a day has at least one row, cell NULL if no reading names a
-- cell). cell_day.sql turns them into shares; computed while the readings table is
-- there (the cell jobs run later, see cell_rows.sql).
WITH n_read AS (SELECT vin, day_n, count(*) AS n_readings FROM readings GROUP BY vin, day_n),
mins AS (SELECT vin, day_n, cell_min_idx AS cell, count(*) AS n FROM readings GROUP BY ALL),
maxs AS (SELECT vin, day_n, cell_max_idx AS cell, count(*) AS n FROM readings GROUP BY ALL)
SELECT vin, day_n, cell, mins.n AS n_min, maxs.n AS n_max, n_read.n_readings
FROM mins
FULL JOIN maxs USING (vin, day_n, cell)
JOIN n_read USING (vin, day_n);
