-- A chord header part is stored once: its result row names its chord and header index
-- (chord_part, the second copy, is no longer written by this version).
ALTER TABLE {schema}.result ADD COLUMN chord_id text, ADD COLUMN chord_index integer;
CREATE INDEX result_chord_idx ON {schema}.result (chord_id, chord_index) WHERE chord_id IS NOT NULL;
