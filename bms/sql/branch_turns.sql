-- branch_turns: the readings where the current turns from discharging to charging or
-- back, by mode (a reading entering a charge or a discharge mode from another mode), with
-- the day's charge count there: the LFP hysteresis branch moves towards the new
-- direction from that count on (bms.hysteresis_offset_mv). Entering the mode it left
-- before an idle spell is listed too; the caller keeps only real turns.
SELECT
    vin,
    day_n,
    ts_ms,
    CASE WHEN mode IN ('ac_charge', 'dc_charge') THEN 1 ELSE -1 END AS direction,
    q_cum_uah
FROM readings
WHERE mode IN ('ac_charge', 'dc_charge', 'drive', 'v2g')
    AND mode IS DISTINCT FROM prev_mode
ORDER BY day_n, vin, ts_ms
