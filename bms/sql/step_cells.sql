-- step_cells: per resistance step, the sum over the cells of their voltage steps
-- [mV, an exact integer] (steps where a cell value is missing are left out; null where
-- one is outside the plausible range). With the pack
-- step it splits the pack resistance into cells (thermally activated) and interconnects
-- (busbars, contactors: not normalised), see bms._analytics. `pre_min_mv` is the lowest
-- cell's rested voltage before the step: the pack's SoC band says nothing of a cell that
-- a leak has drained, whose resistance rises as it empties (bms._analytics drops the step).
-- `temp_c` is the median of the step reading's sensors [degC]: one stuck or erratic
-- sensor moves the readings' mean temperature, and with it every normalised resistance
-- from the day it failed (a step in the growth trend), but not the median of three or
-- more. Of two, neither outvotes the other, so a sensor is left out of the median where
-- it moved more than 2 K since the reading before the step (seconds earlier: a pack's
-- temperature does not, an erratic sensor's noise does), on every step of a day where
-- it did so at half of them or more (noise can land near the last value by chance), and
-- where it reads outside -40..90 degC (sentinel values); where no sensor is left, all
-- count.
-- The pre-step rows are joined first and kept (MATERIALIZED): with the list-length
-- conditions in one statement DuckDB may join the two cell_rows sides to each other
-- first, on vin and the lengths alone, which pairs every reading of a vehicle with every
-- other (seen: 11 GB and 15 s for a 64-day unit of 200 vehicles).
WITH pre AS MATERIALIZED (
    SELECT s.vin, s.day_n, s.seq, c.cell_mv AS pre_mv, c.temp_dc AS pre_dc
    FROM steps s
    JOIN cell_rows c ON c.vin = s.vin AND c.seq = s.prev_seq
),
both_sides AS (
    SELECT p.vin, p.day_n, p.seq, p.pre_mv, c.cell_mv AS post_mv, p.pre_dc,
        c.temp_dc AS post_dc
    FROM pre p
    JOIN cell_rows c ON c.vin = p.vin AND c.seq = p.seq
),
-- per vehicle, day and sensor: the share of the day's steps it jumped at
sensors AS (
    SELECT vin, day_n, k, avg((abs(post_dc[k] - pre_dc[k]) > 20)::INTEGER) AS jump_share
    FROM (SELECT vin, day_n, post_dc, pre_dc, unnest(range(1, len(post_dc) + 1)) AS k
          FROM both_sides)
    GROUP BY ALL
),
erratic AS (
    SELECT vin, day_n, list(k) AS erratic_k
    FROM sensors
    WHERE jump_share >= 0.5
    GROUP BY ALL
)
SELECT
    vin,
    day_n,
    seq,
    -- a cell outside the contract's plausible range (a broken sense wire, a cell drained
    -- by a short) steps by nothing its resistance explains: no cells' share
    CASE WHEN list_min(pre_mv) >= getvariable('cell_mv_min')
            AND list_max(pre_mv) <= getvariable('cell_mv_max')
            AND list_min(post_mv) >= getvariable('cell_mv_min')
            AND list_max(post_mv) <= getvariable('cell_mv_max')
        THEN (list_sum(post_mv) - list_sum(pre_mv))::BIGINT END AS cells_delta_mv,
    list_min(pre_mv) AS pre_min_mv,
    len(post_mv) AS n_cells,
    coalesce(
        list_median(list_filter(
            post_dc,
            lambda x, i: x BETWEEN -400 AND 900
                AND abs(x - pre_dc[i]) <= 20
                AND NOT list_contains(coalesce(erratic_k, []), i)
        )),
        list_median(post_dc)
    ) / 10.0 AS temp_c
FROM both_sides
LEFT JOIN erratic USING (vin, day_n)
WHERE len(pre_mv) = len(post_mv)
    AND list_count(pre_mv) = len(pre_mv)
    AND list_count(post_mv) = len(post_mv)
ORDER BY day_n, vin, seq;
