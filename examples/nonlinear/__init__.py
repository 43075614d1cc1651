"""Toy two-class problems in the plane, trained with graphnet's Trainer."""
