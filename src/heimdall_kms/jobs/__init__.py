"""Jobs over stored data: census, migration, journal rollback; re-encryption later."""
