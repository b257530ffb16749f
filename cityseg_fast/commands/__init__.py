"""cityseg_fast.commands"""
