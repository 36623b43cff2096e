"""What every stage shares around its batch function: statistics now; the run loop and checkpoint as they move here."""
