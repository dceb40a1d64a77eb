-- step_cells: per resistance step, the sum over the cells of their voltage steps
-- [mV, an exact integer] (steps where a cell value is missing are left out). With the pack
-- step it splits the pack resistance into cells (thermally activated) and interconnects
-- (busbars, contactors: not normalised), see bms._analytics. `pre_min_mv` is the lowest
-- cell's rested voltage before the step: the pack's SoC band says nothing of a cell that
-- a leak has drained, whose resistance rises as it empties (bms._analytics drops the step).
-- `temp_c` is the median of the step reading's sensors [degC]: one stuck or erratic
-- sensor moves the readings' mean temperature, and with it every normalised resistance
-- from the day it failed (a step in the growth trend), but not the median of three or
-- more.
-- The pre-step rows are joined first and kept (MATERIALIZED): with the list-length
-- conditions in one statement DuckDB may join the two cell_rows sides to each other
-- first, on vin and the lengths alone, which pairs every reading of a vehicle with every
-- other (seen: 11 GB and 15 s for a 64-day unit of 200 vehicles).
WITH pre AS MATERIALIZED (
    SELECT s.vin, s.day_n, s.seq, c.cell_mv AS pre_mv
    FROM steps s
    JOIN cell_rows c ON c.vin = s.vin AND c.seq = s.prev_seq
),
both_sides AS (
    SELECT p.vin, p.day_n, p.seq, p.pre_mv, c.cell_mv AS post_mv, c.temp_dc AS post_dc
    FROM pre p
    JOIN cell_rows c ON c.vin = p.vin AND c.seq = p.seq
)
SELECT
    vin,
    day_n,
    seq,
    (list_sum(post_mv) - list_sum(pre_mv))::BIGINT AS cells_delta_mv,
    list_min(pre_mv) AS pre_min_mv,
    len(post_mv) AS n_cells,
    list_median(post_dc) / 10.0 AS temp_c
FROM both_sides
WHERE len(pre_mv) = len(post_mv)
    AND list_count(pre_mv) = len(pre_mv)
    AND list_count(post_mv) = len(post_mv)
ORDER BY day_n, vin, seq;
