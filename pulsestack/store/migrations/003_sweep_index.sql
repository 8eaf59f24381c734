-- The silent-meter sweep looks at devices whose registration deadline passed since its previous sweep.
CREATE INDEX devices_created_at ON devices (created_at) WHERE NOT disabled;
