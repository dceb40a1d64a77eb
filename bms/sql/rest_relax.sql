-- rest_relax: per short rest chosen by relax_select.sql, its readings' mean cell voltage
-- [mV] against their time since the rest began [s], in time order, for the relaxation
-- fit (bms._relax). The mean of the cells, not the pack voltage over the cell count:
-- the pack voltage is reported to 0.1 V, 7 mV per cell of a 14-cell pack.
SELECT
    s.vin, s.day_n, s.run_id,
    list(s.t_s ORDER BY s.t_s) AS t_s,
    list(list_avg(c.cell_mv) ORDER BY s.t_s) AS mean_cell_mv
FROM relax_select s
JOIN cell_rows c ON c.vin = s.vin AND c.seq = s.seq
GROUP BY s.vin, s.day_n, s.run_id
ORDER BY s.day_n, s.vin, s.run_id;
