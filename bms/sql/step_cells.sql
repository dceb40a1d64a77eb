-- step_cells: per resistance step, the sum over the cells of their voltage steps
-- [mV, an exact integer] (steps where a cell value is missing are left out). With the pack
-- step it splits the pack resistance into cells (thermally activated) and interconnects
-- (busbars, contactors: not normalised), see bms._analytics.
SELECT
    s.vin,
    s.day_n,
    s.seq,
    (list_sum(post.cell_mv) - list_sum(pre.cell_mv))::BIGINT AS cells_delta_mv,
    len(post.cell_mv) AS n_cells
FROM steps s
JOIN cell_rows pre ON pre.vin = s.vin AND pre.seq = s.prev_seq
JOIN cell_rows post ON post.vin = s.vin AND post.seq = s.seq
WHERE len(pre.cell_mv) = len(post.cell_mv)
    AND list_count(pre.cell_mv) = len(pre.cell_mv)
    AND list_count(post.cell_mv) = len(post.cell_mv)
ORDER BY s.day_n, s.vin, s.seq;
