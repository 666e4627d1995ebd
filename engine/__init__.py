"""architect.engine"""
