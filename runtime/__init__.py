"""architect.runtime"""
