"""cityseg_fast.report"""
