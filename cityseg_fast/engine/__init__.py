"""cityseg_fast.engine"""
