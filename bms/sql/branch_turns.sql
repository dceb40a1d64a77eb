-- branch_turns: the readings where the current turns from discharging to charging or
-- back, by mode (a reading entering a charge or a discharge mode from another mode), and
-- those after a gap that broke the charge count (`reset`: what happened in the gap is
-- unknown, so the count in the direction of the reading's mode restarts there; 0: a
-- mode of neither direction), with the day's charge count there: the LFP hysteresis
-- branch moves towards the new direction from that count on (bms.hysteresis_offset_mv).
-- Entering the mode it left before an idle spell is listed too; the caller keeps only
-- real turns. The readings table flags them (`branch_turn`, computed in its streaming
-- pass): a scan here comparing every reading's modes took analyze of the benchmark's
-- fleet-day from 40.9-42.5 to 43.1-44.3 s CPU, the flag to 41.1-43.6.
SELECT
    vin,
    day_n,
    ts_ms,
    CASE
        WHEN mode IN ('ac_charge', 'dc_charge') THEN 1
        WHEN mode IN ('drive', 'v2g') THEN -1
        ELSE 0
    END AS direction,
    bad_gap AS reset,
    q_cum_uah
FROM readings
WHERE branch_turn
ORDER BY day_n, vin, ts_ms
