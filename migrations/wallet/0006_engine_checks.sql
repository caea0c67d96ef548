-- Raises an error when `ok` is false: lets a statement check what it did without a round trip
-- of its own (the engine's write checks it changed every wallet it meant to).
CREATE FUNCTION wallet.check(ok boolean, message text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'check failed: %', message;
    END IF;
    RETURN true;
END
$$;
