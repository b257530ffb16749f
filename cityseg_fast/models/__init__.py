"""cityseg_fast.models"""
