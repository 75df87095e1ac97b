"""Treatment sessions: validate what staff enter, plan the regimen, store it in one transaction."""
