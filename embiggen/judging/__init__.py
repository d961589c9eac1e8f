"""Judging answers: exact-match evaluation, the gold labeler, and preference pairs collected from it."""
