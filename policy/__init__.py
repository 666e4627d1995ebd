"""architect.policy"""
