"""Tests of the search_spaces package."""
