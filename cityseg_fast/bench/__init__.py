"""cityseg_fast.bench"""
